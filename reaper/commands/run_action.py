"""`idle-reaper run-action`: run the configured action now. idle-reaper-action.service runs this, in its own
sandbox, when the tick finds a command action due (see reaper.actions)."""

from reaper import actions, config
from reaper.errors import EXIT_OK


def handle(args, paths):
    cfg = config.load(paths.config)
    output = actions.run(cfg.action)
    if output:
        print(output)
    return EXIT_OK
