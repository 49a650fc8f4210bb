"""A staged request rate for the lab's users: ``--stages RPS:DURATION,...``.

Each user sends one request a second, and the shape runs as many users as the stage's rate,
so ``--stages 5:30s,20:1m,5:30s`` is 5 requests/s for 30 s, 20/s for a minute, then 5/s
again -- the lab's one-request-a-second load generator, scaled. The run stops after the
last stage.

    locust -f loadtests/rate_shape.py CanaryUser --host http://127.0.0.1:8080 \\
        --headless --stages 5:30s,20:1m,5:30s --csv /tmp/staged

The user classes are the ones of ``locustfile.py`` (imported below); name the ones to run.
"""

from __future__ import annotations

import math
import re

from locust import LoadTestShape, events
from locustfile import CanaryUser, StickyUser, StorefrontUser, TesterUser  # noqa: F401

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--stages", default="5:30s,20:1m,5:30s", env_var="LOCUST_STAGES",
                        help="comma-separated RPS:DURATION stages, e.g. 5:30s,20:1m")


def parse_stages(text: str) -> list[tuple[float, float]]:
    """``"5:30s,20:1m"`` -> [(5.0, 30.0), (20.0, 60.0)]: (requests/s, seconds) per stage."""
    stages = []
    for item in text.split(","):
        rate, _, duration = item.strip().partition(":")
        found = _DURATION.fullmatch(duration.strip())
        if not found or float(rate) < 0:
            raise ValueError(f"bad stage {item!r}: expected RPS:DURATION such as 10:30s")
        stages.append((float(rate), float(found.group(1)) * _SECONDS[found.group(2)]))
    return stages


class RateShape(LoadTestShape):
    """Users = the current stage's rate (each user paces itself to 1 request/s)."""

    def tick(self):
        options = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        elapsed = 0.0
        for rate, duration in parse_stages(options.stages):
            elapsed += duration
            if run_time < elapsed:
                users = math.ceil(rate)
                return users, max(1, users)  # reach the stage's rate within a second
        return None
