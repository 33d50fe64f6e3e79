"""Bad configs and bad command lines end in one line that names the field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamserve.config import ConfigError, load_cluster
from streamserve.perfmodel import Profile, ProfileError

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: mine
lanes:
  - {role: prefill, tp: 1, pair: 0}
  - {role: decode, tp: 1, pair: 0}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_config_loads(tmp_path):
    cfg = load_cluster(write(tmp_path, GOOD))
    assert [lane.role for lane in cfg.lanes] == ["prefill", "decode"]


@pytest.mark.parametrize("text,expected", [
    (GOOD.replace("tp: 1, pair: 0}\n  - {role: decode", "tp: 0, pair: 0}\n  - {role: decode"), "c.yaml:3: lanes.0.tp:"),
    (GOOD.replace("role: decode", "role: decoder"), "c.yaml:4: lanes.1.role:"),
    (GOOD + "link: {bandwidth_gbps: -1}\n", "link.bandwidth_gbps:"),
    (GOOD + "engine: {max_num_seqs: many}\n", "engine.max_num_seqs:"),
    (GOOD + "colour: blue\n", "colour: Extra inputs are not permitted"),
    (GOOD.replace("  - {role: decode, tp: 1, pair: 0}\n", ""), "at least one prefill and one decode lane"),
    (GOOD + "faults: [{lane: 9, at: 1, kind: down}]\n", "faults.0.lane: lane 9 does not exist"),
    ("lanes: [ {role: prefill\n", "c.yaml:2: invalid YAML"),
    ("- just a list\n", "expected a mapping"),
])
def test_bad_config_names_the_field(tmp_path, text, expected):
    with pytest.raises(ConfigError) as e:
        load_cluster(write(tmp_path, text))
    msg = str(e.value)
    assert expected in msg
    assert "\n" not in msg


def test_toml_config(tmp_path):
    p = write(tmp_path, '[[lanes]]\nrole = "colocated"\ntp = "four"\n', "c.toml")
    with pytest.raises(ConfigError, match=r"c.toml: lanes.0.tp:"):
        load_cluster(p)


def test_profile_version_and_missing_entry(tmp_path):
    data = json.loads((ROOT / "streamserve/profiles/default-a100.json").read_text())
    data["version"] = 99
    p = tmp_path / "p.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="field 'version' is 99"):
        Profile.load(p)
    data["version"] = 1
    p.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="version 1 .* is no longer read; convert"):
        Profile.load(p)
    # a pair the profile lacks falls back to the roofline; an unknown name says what is known
    assert Profile.load().lane("opt-13b", "H100", 1).source.startswith("roofline")
    with pytest.raises(ProfileError, match="unknown GPU 'B300' .known: A100-40GB, A100-80GB"):
        Profile.load().lane("opt-13b", "B300", 1)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamserve.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args,expected", [
    (["simulate", "--rate", "abc"], "'--rate'"),
    (["simulate", "--num-requests", "0"], "'--num-requests'"),
    (["simulate", "--arch", "nope"], "'--arch'"),
    (["simulate", "--slo", "ttft=3"], "--slo: expected ttft:MS"),
    (["simulate", "--config", "missing.yaml"], "missing.yaml: config file not found"),
])
def test_bad_cli_arguments_fail_with_one_line(tmp_path, args, expected):
    p = cli(*args, cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert expected in lines[0]


def test_bad_config_through_the_cli(tmp_path):
    write(tmp_path, GOOD.replace("tp: 1, pair: 0}\n  - {role: decode", "tp: -2, pair: 0}\n  - {role: decode"))
    p = cli("simulate", "--config", "c.yaml", "-q", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip() == "Error: c.yaml:3: lanes.0.tp: Input should be greater than or equal to 1"
