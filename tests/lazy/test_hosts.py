"""hosts.toml as containerd reads it: hosts in order, the server last, paths, capabilities,
TLS settings, the directory lookup, Docker's certificate files, reloading."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusesnap.errors import RegistryError
from fusesnap.registry.hosts import (
    CAPABILITIES,
    HostsConfig,
    RegistryHost,
    default_host,
    host_directory_names,
    load_hosts,
    parse_duration,
    parse_hosts_file,
)

BASE = Path("/etc/fusesnap/certs.d/docker.io")

# containerd's "Setup a Local Mirror for Docker" example, with a header table.
MIRRORS = """
server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]                  # Requires less trust, won't resolve tag to digest
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"
  [host."https://docker-mirror.internal".header]
    x-team = ["a", "b"]
    x-one = "c"
"""


def parse(text: str, registry: str = "docker.io") -> tuple[RegistryHost, ...]:
    return parse_hosts_file(text, registry=registry, base_dir=BASE, source="hosts.toml")


def test_mirrors_in_file_order_then_the_server() -> None:
    public, internal, server = parse(MIRRORS)
    assert [h.host for h in (public, internal, server)] == [
        "public-mirror.example.com",
        "docker-mirror.internal",
        "registry-1.docker.io",
    ]
    assert public.capabilities == {"pull"}
    assert internal.capabilities == {"pull", "resolve"}
    assert server.capabilities == CAPABILITIES
    assert (public.mirror, internal.mirror, server.mirror) == (True, True, False)
    assert (public.server, internal.server, server.server) == (False, False, True)
    assert {h.scheme for h in (public, internal, server)} == {"https"}
    assert internal.ca == (str(BASE / "docker-mirror.crt"),)  # relative to the file
    assert internal.headers == (("x-team", "a"), ("x-team", "b"), ("x-one", "c"))
    assert public.path == server.path == "/v2"


def test_no_server_means_the_registry_itself_with_the_top_level_settings() -> None:
    *mirrors, server = parse(
        'ca = "/etc/ca.pem"\nskip_verify = true\n[host."http://127.0.0.1:5001"]\n',
        registry="127.0.0.1:5000",
    )
    assert [m.host for m in mirrors] == ["127.0.0.1:5001"]
    assert mirrors[0].scheme == "http"
    assert mirrors[0].capabilities == CAPABILITIES  # none given: all three
    # The registry's own address keeps the client's scheme rule (scheme None).
    assert (server.host, server.scheme, server.mirror) == ("127.0.0.1:5000", None, False)
    assert (server.ca, server.skip_verify) == (("/etc/ca.pem",), True)
    # docker.io is served at registry-1.docker.io.
    assert parse("").__getitem__(0).host == "registry-1.docker.io"


@pytest.mark.parametrize(
    ("url", "override", "host", "scheme", "path"),
    [
        ("mirror.example", False, "mirror.example", "https", "/v2"),
        ("http://mirror.example:5000", False, "mirror.example:5000", "http", "/v2"),
        ("https://mirror.example/v2", False, "mirror.example", "https", "/v2"),
        ("https://mirror.example/us/", False, "mirror.example", "https", "/us/v2"),
        ("https://mirror.example/v2/upstream", True, "mirror.example", "https", "/v2/upstream"),
        ("https://mirror.example", True, "mirror.example", "https", ""),
    ],
)
def test_host_urls(url: str, override: bool, host: str, scheme: str, path: str) -> None:
    flag = "override_path = true\n" if override else ""
    (mirror, _server) = parse(f'[host."{url}"]\n{flag}')
    assert (mirror.host, mirror.scheme, mirror.path) == (host, scheme, path)


def test_client_certificates_and_dial_timeout() -> None:
    (a, b, _server) = parse(
        '[host."https://a"]\nclient = "c.pem"\ndial_timeout = "1m30s"\n'
        '[host."https://b"]\nclient = [["/x.cert", "/x.key"], ["y.pem", ""]]\n'
        'dial_timeout = "500ms"\n'
    )
    assert a.client == ((str(BASE / "c.pem"), ""),)
    assert b.client == (("/x.cert", "/x.key"), (str(BASE / "y.pem"), ""))
    assert (a.dial_timeout, b.dial_timeout) == (90.0, 0.5)
    assert a.custom_tls
    assert not parse('[host."https://c"]\n')[0].custom_tls


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[host."https://m"]\ncapabilities = ["pul"]\n', "unknown capability pul"),
        ('[host."https://m"]\ncapabilities = "pull"\nskip_verify = "yes"\n', "skip_verify"),
        ('[host."https://m"]\nca = 3\n', "ca: expected a string or a list"),
        ('[host."https://m"]\ndial_timeout = "soon"\n', "not a duration"),
        ('[host."https://m"]\nclient = [[1, 2]]\n', "client"),
        ('server = ""\n', "server: expected a URL"),
        ('[host."https://m"\n', "not valid TOML"),
        ('host = "https://m"\n', "expected [host"),
    ],
)
def test_bad_files_are_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(RegistryError, match=r"^hosts\.toml: ") as info:
        parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_durations() -> None:
    assert parse_duration("2s", what="x") == 2.0
    assert parse_duration("1h2m", what="x") == 3720.0
    assert parse_duration("1.5s", what="x") == 1.5
    for bad in ("", "2", "s", "2 s", "-1s"):
        with pytest.raises(RegistryError):
            parse_duration(bad, what="x")


def test_directory_names_are_containerds() -> None:
    assert host_directory_names("myreg:5000") == ["myreg_5000_", "myreg:5000", "_default"]
    assert host_directory_names("docker.io") == ["docker.io", "_default"]
    assert host_directory_names("[::1]") == ["[::1]", "_default"]
    assert host_directory_names("[::1]:5000") == ["[::1]_5000_", "[::1]:5000", "_default"]


def write(directory: Path, text: str) -> None:
    directory.mkdir(parents=True)
    (directory / "hosts.toml").write_text(text)


def test_lookup_order(tmp_path: Path) -> None:
    first, second = tmp_path / "fusesnap", tmp_path / "containerd"
    write(second / "myreg:5000", '[host."http://from-containerd"]\n')
    write(second / "_default", '[host."http://default-of-containerd"]\n')
    dirs = [first, second]
    assert load_hosts("myreg:5000", dirs)[0].host == "from-containerd"
    write(first / "_default", '[host."http://default-of-fusesnap"]\n')
    # The first directory that configures the registry wins, its _default included.
    assert load_hosts("myreg:5000", dirs)[0].host == "default-of-fusesnap"
    write(first / "myreg_5000_", '[host."http://underscored"]\n')
    write(first / "myreg:5000", '[host."http://coloned"]\n')
    assert load_hosts("myreg:5000", dirs)[0].host == "underscored"
    assert load_hosts("other.example", [second])[0].host == "default-of-containerd"
    # Nothing configured: the registry alone.
    assert load_hosts("other.example", [tmp_path / "none"]) == (default_host("other.example"),)
    assert load_hosts("other.example", []) == (default_host("other.example"),)


def test_a_directory_without_hosts_toml_is_read_the_docker_way(tmp_path: Path) -> None:
    directory = tmp_path / "myreg.example"
    directory.mkdir()
    for name in ("ca.crt", "client.cert", "client.key", "lone.cert", "notes.txt"):
        (directory / name).write_text("x")
    (host,) = load_hosts("myreg.example", [tmp_path])
    assert host.host == "myreg.example"
    assert host.ca == (str(directory / "ca.crt"),)
    assert host.client == (
        (str(directory / "client.cert"), str(directory / "client.key")),
        (str(directory / "lone.cert"), ""),
    )


def test_a_bad_file_names_its_path(tmp_path: Path) -> None:
    write(tmp_path / "myreg.example", "server = 3\n")
    with pytest.raises(RegistryError, match=str(tmp_path / "myreg.example" / "hosts.toml")):
        load_hosts("myreg.example", [tmp_path])


def test_config_is_reloaded_after_a_while(tmp_path: Path) -> None:
    now = [0.0]
    config = HostsConfig([tmp_path], clock=lambda: now[0], reload_after=30)
    assert config.cached("myreg.example") is None
    assert config.load("myreg.example")[0].host == "myreg.example"
    write(tmp_path / "myreg.example", '[host."http://mirror"]\n')
    now[0] = 29
    assert config.cached("myreg.example") == (default_host("myreg.example"),)
    now[0] = 31
    assert config.cached("myreg.example") is None
    assert config.load("myreg.example")[0].host == "mirror"
