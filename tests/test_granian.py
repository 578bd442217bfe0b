"""granian's plain command, the way its users run it, stopped by SIGTERM and SIGINT.

granian is not in ``SERVERS``: its fd-limit admission and stalled-client memory tests do
not pass yet. These are the stopping tests of ``tests/test_stopping.py`` run under it.
"""

from __future__ import annotations

import signal

import pytest
from test_stopping import (
    test_the_plain_server_command_stops_at_once_and_every_client_gets_its_goodbye as stops,
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("factory", ["raw_app", "starlette_app"])
def test_granian_stops_at_once_and_every_client_gets_its_goodbye(
    factory: str, signum: signal.Signals
) -> None:
    stops("granian", factory, signum)
