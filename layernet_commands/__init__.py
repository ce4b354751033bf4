"""The command-line tools: ``layernet-train``, ``layernet-evaluate`` and ``layernet-predict``.

Each module (:mod:`~layernet_commands.train`, :mod:`~layernet_commands.evaluate`,
:mod:`~layernet_commands.predict`) parses its options, calls the library and reports:
``main(argv)`` returns the exit code and raises on errors; ``run()`` is the console script, which
turns expected errors into one line on stderr. ``train.py``, ``evaluate.py`` and ``predict.py`` at
the top of the repository run the same ``run()``.

This package joins the library (``layernet``) and the dataset readers (``datasets``, which
depends on ``layernet``): ``layernet`` imports neither of them.
"""
