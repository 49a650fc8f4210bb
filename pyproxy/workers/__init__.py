"""``pyproxy run --workers N``: N processes sharing the listen port under a supervisor.

* ``supervisor``: the parent process — starts the workers, restarts one that exits, passes
  signals on;
* ``state_file``: run-time state (weight overrides, faults, canaries) kept in step between
  the workers, and across restarts, through one file in the state directory;
* ``peers``: the leader's view of the other workers — it fetches their ``/metrics`` and live
  windows and adds them up (the arithmetic is ``metrics.merge``).
"""
