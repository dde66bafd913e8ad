"""What moves the learning rate: the tuners, their update rule, schedules, peers, replay.

Nothing here builds a run or touches the store: :mod:`adatune.running` puts
these parts together. Importing this package loads nothing (each module loads
torch when it needs it).
"""
