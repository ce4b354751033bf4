#!/usr/bin/env python
"""Score instance segmentations with the paper's metrics (AP@0.5..0.9, meanAP, AJI).

``python evaluate.py --help`` lists the options. The command is :mod:`layernet_commands.evaluate`
(installed as ``layernet-evaluate``); this file only runs it.
"""

from layernet_commands.evaluate import run

if __name__ == "__main__":
    run()
