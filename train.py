#!/usr/bin/env python
"""Train a layernet model (two phases, paper Section 2).

``python train.py --help`` lists the options. The command is :mod:`layernet_commands.train`
(installed as ``layernet-train``); this file only runs it.
"""

from layernet_commands.train import run

if __name__ == "__main__":
    run()
