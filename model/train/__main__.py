"""`python -m model.train ...` (and `torchrun ... -m model.train ...`): see model/train/__init__.py."""

from model.train.train import main

main()
