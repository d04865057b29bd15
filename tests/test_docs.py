"""The documentation names what the code has: every flag in docs/flags.md exists, and every flag is documented."""
import re

import pytest

import sweep
import train


def documented_flags(page: str, entry_point: str) -> set[str]:
    """The flags in the first column of the table under `## `<entry_point>``."""
    section = page.split(f"## `{entry_point}`")[1].split("\n## ")[0]
    return {flag for line in section.splitlines() if line.startswith("| `-") for flag in re.findall(r"`(-[-\w]+)`", line.split(" | ")[0])}


@pytest.mark.parametrize("entry_point, parser", [("train.py", train.parser), ("sweep.py", sweep.parser)])
def test_every_flag_is_documented_and_every_documented_flag_exists(project, entry_point, parser):
    page = (project / "docs" / "flags.md").read_text()
    actual = {option for action in parser()._actions for option in action.option_strings}
    assert documented_flags(page, entry_point) == actual


def test_the_readme_links_only_to_pages_that_exist(project):
    readme = (project / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)[^)]*\)", readme):
        if "://" not in target:
            assert (project / target).exists(), target
