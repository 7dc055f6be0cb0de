"""The docs come from the same source as the checks: README.s config reference is reaper.config.schema.SCHEMA."""

import re

from reaper import config
from reaper.config import schema
from tests.conftest import REPO


def block(text, name):
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert match, f"README.md has no {name} block"
    return match.group(1).strip()


def test_readme_config_reference_is_generated_from_the_schema():
    readme = (REPO / "README.md").read_text()
    assert block(readme, "config-reference") == schema.reference_markdown(), (
        "README.md's config reference is out of date; regenerate it from reaper.config.schema.reference_markdown()"
    )


def test_readme_example_config_is_valid(tmp_path):
    readme = (REPO / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    path = tmp_path / "c.yaml"
    path.write_text(example)
    cfg = config.load(str(path))
    assert cfg.inactivity_duration == 7200 and cfg.ignore_users == {"dstack"}
