"""Helpers shared by every test folder.

- ``fails(argv, match)``: run ``tomoseg ARGV`` in-process and assert it fails with exit code 1 and
  one line on stderr that starts with ``tomoseg: error:`` and contains ``match``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest


@pytest.fixture
def fails(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str], str], str]:
    from napari_tomoseg.cli import main

    def check(argv: Sequence[str], match: str) -> str:
        capsys.readouterr()
        assert main(list(argv)) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("tomoseg: error:") and "\n" not in err, err
        assert match in err, err
        return err

    return check
