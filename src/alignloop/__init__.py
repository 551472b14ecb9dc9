"""alignloop: the whole loop of reinforcement learning from human feedback.

prompts -> completions -> human rankings -> pairs -> reward model -> PPO -> evaluation,
and around again. See the README for the layout of the package.
"""

__version__ = "0.1.0"
