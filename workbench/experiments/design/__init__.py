"""What a grid is: imports nothing of ``running`` or ``analysis``.

``procedures`` (the procedure identity: reserved, schedule and design keys, per-round
targets, same-procedure and one-factor rules) <- ``profiles`` (budget scaling) and
``contrasts`` (declared questions and contrasts, their testable levels) <- ``specs``.
"""
