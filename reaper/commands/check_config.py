"""`idle-reaper check-config`: validate the config file; print each problem and exit 3 if any."""

from reaper import config
from reaper.config.durations import format_seconds
from reaper.errors import EXIT_OK


def handle(args, paths):
    cfg = config.load(paths.config)
    kind = "dstack dev-environment, " if cfg.dstack else ""
    duration = format_seconds(cfg.inactivity_duration) if cfg.inactivity_duration else "off"
    print(f"{paths.config}: ok ({kind}inactivity_duration {duration})")
    return EXIT_OK
