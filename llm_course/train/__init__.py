"""Training: the loop and everything built on it, from pretraining to fine-tuning and PEFT. Chapters 04-06 and 09.

``loop`` is the training loop (``train``, ``TrainConfig``) with ``precision`` (mixed precision),
``checkpoints`` (exact resume) and ``liveplot`` (the live loss curve); ``recipe``, ``pretraining`` and
``masked_lm`` pretrain GPT and BERT (chapter 04); ``instructions`` and ``instruct`` do supervised
fine-tuning on instructions, ``finetuning`` runs Hugging Face's Trainer and ``manual_trainer`` the manual's
Trainer code (chapter 05); ``lora``, ``qlora`` and ``adapters`` are parameter-efficient fine-tuning and
``finetuning_costs`` measures what each costs (chapter 06); ``practices`` (memory, precision),
``monitoring`` and ``trainer_monitoring`` (TensorBoard, divergence alarms), ``distributed`` (DDP) and
``hpsearch`` (Ray Tune) are chapter 09. ``train`` may import ``core``, ``text``, ``nn``, ``models``,
``viz`` and ``infer``; never ``zoo`` or ``apps``, which are built on it.
"""
