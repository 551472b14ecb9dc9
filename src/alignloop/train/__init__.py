"""The trainers: the reward model (`reward.py`), supervised fine-tuning (`sft.py`) and
PPO (`ppo.py`), each with its options beside it (`*_config.py`) and what they share in
`common.py`. Each reads its data from files in the schema's formats and saves an
ordinary HF directory.

This package's own module imports nothing heavy, so the CLI can name its errors."""


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, say); the message says what is kept."""
