"""The config watcher reacts to the config only (regression: a log file written beside the
config once triggered an endless reload loop)."""

from pyproxy.reload import _relevant_filter


def test_only_config_changes_count(tmp_path):
    single = tmp_path / "one" / "pyproxy.yaml"
    single.parent.mkdir()
    single.write_text("routes: []\n")
    directory = tmp_path / "conf.d"
    directory.mkdir()
    relevant = _relevant_filter([str(single), str(directory)])
    assert relevant(None, str(single))
    assert not relevant(None, str(single.parent / "proxy.log"))
    assert not relevant(None, str(single.parent / "other.yaml"))  # a file config watches itself
    assert relevant(None, str(directory / "routes.yaml"))
    assert relevant(None, str(directory / "extra.yml"))
    assert not relevant(None, str(directory / ".routes.yaml.swp"))
    assert relevant(None, str(directory / "..data"))  # ConfigMap symlink swap
    assert relevant(None, str(directory / "..data_tmp"))
