#!/usr/bin/env python
"""Segment images with a trained layernet model; overlapping objects come out in separate layers.

``python predict.py --help`` lists the options. The command is :mod:`layernet_commands.predict`
(installed as ``layernet-predict``); this file only runs it.
"""

from layernet_commands.predict import run

if __name__ == "__main__":
    run()
