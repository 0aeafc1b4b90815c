"""The `selfy` entry point: version, help, bad usage."""

import pytest

from selfy_tf.cli.main import main
from selfy_tf.version import __version__


def test_version_prints_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_succeeds(capsys):
    assert main([]) == 0
    assert "usage: selfy" in capsys.readouterr().err


def test_unknown_command_is_bad_usage():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
