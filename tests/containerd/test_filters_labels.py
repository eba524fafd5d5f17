"""containerd's list filters and snapshot labels, as the snapshotter reads them."""

from __future__ import annotations

import pytest

from fusesnap.containerd.filters import FilterError, matches, parse_filter, parse_filters
from fusesnap.containerd.labels import (
    MAX_LABEL_SIZE,
    InvalidLabelError,
    check_labels,
    remote_source,
)
from fusesnap.digest import Digest
from fusesnap.store import ACTIVE, COMMITTED, SnapshotRecord

CHAIN = "sha256:" + "c" * 64
LAYER = "sha256:" + "d" * 64


def _record(key: str, parent: str | None = None, **labels: str) -> SnapshotRecord:
    return SnapshotRecord(key, COMMITTED, parent, labels=dict(labels))


def test_the_filter_containerd_sends_for_a_remote_snapshot() -> None:
    text = f'labels."containerd.io/snapshot.ref"=={CHAIN},parent=="default/3/sha256:ab"'
    terms = parse_filter(text)
    assert [t.path for t in terms] == [("labels", "containerd.io/snapshot.ref"), ("parent",)]
    good = SnapshotRecord(
        CHAIN, COMMITTED, "default/3/sha256:ab", labels={"containerd.io/snapshot.ref": CHAIN}
    )
    assert matches([terms], good)
    other_parent = SnapshotRecord(
        CHAIN, COMMITTED, "default/4/sha256:ab", labels={"containerd.io/snapshot.ref": CHAIN}
    )
    assert not matches([terms], other_parent)


def test_filters_or_between_and_within() -> None:
    a, b = _record("a", x="1"), _record("b", "a")
    active = SnapshotRecord("c", ACTIVE, "b")
    assert matches([], a)  # no filter: everything
    either = parse_filters(["name==a", "parent==a"])
    assert [matches(either, r) for r in (a, b, active)] == [True, True, False]
    assert matches(parse_filters(["labels.x"]), a)
    assert not matches(parse_filters(["labels.x"]), b)
    assert matches(parse_filters(["kind==active,name~=^c$"]), active)
    assert not matches(parse_filters(["kind==active,name!=c"]), active)
    assert matches(parse_filters(["labels.x==1,name==a"]), a)
    assert matches(parse_filters(["name=='a'"]), a)
    assert matches(parse_filters([r'parent=="a\"b"']), _record("z", 'a"b'))


@pytest.mark.parametrize(
    "text", ["nosuch==1", "labels==1", "name==a,,", 'name=="open', "name~=(", "name foo", ".x"]
)
def test_bad_filters_are_refused(text: str) -> None:
    with pytest.raises(FilterError):
        parse_filter(text)


def test_remote_source_from_either_label_set() -> None:
    stargz = {
        "containerd.io/snapshot.ref": CHAIN,
        "containerd.io/snapshot/remote/stargz.reference": "127.0.0.1:5000/debian:12",
        "containerd.io/snapshot/remote/stargz.digest": LAYER,
    }
    src = remote_source(stargz)
    assert src is not None
    assert (str(src.ref), src.digest, src.chain) == (
        "127.0.0.1:5000/debian:12",
        Digest(LAYER),
        CHAIN,
    )
    cri = {
        "containerd.io/snapshot.ref": CHAIN,
        "containerd.io/snapshot/cri.image-ref": "registry.example/app@sha256:" + "e" * 64,
        "containerd.io/snapshot/cri.layer-digest": LAYER,
    }
    src = remote_source(cri)
    assert src is not None
    assert src.ref.digest == "sha256:" + "e" * 64
    # No target: containerd is not unpacking a layer; no image: nothing to serve lazily.
    assert remote_source({k: v for k, v in stargz.items() if k != TARGET}) is None
    assert remote_source({TARGET: CHAIN}) is None


TARGET = "containerd.io/snapshot.ref"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("containerd.io/snapshot/remote/stargz.reference", "::not a reference::"),
        ("containerd.io/snapshot/remote/stargz.digest", "sha256:short"),
    ],
)
def test_remote_labels_that_do_not_parse(key: str, value: str) -> None:
    labels = {
        TARGET: CHAIN,
        "containerd.io/snapshot/remote/stargz.reference": "127.0.0.1:5000/debian:12",
        "containerd.io/snapshot/remote/stargz.digest": LAYER,
        key: value,
    }
    with pytest.raises(InvalidLabelError, match=key.rsplit("/", 1)[-1]):
        remote_source(labels)


def test_label_size_limit_is_containerds() -> None:
    check_labels({"k": "v" * (MAX_LABEL_SIZE - 1)})  # key + value: exactly the limit
    with pytest.raises(InvalidLabelError, match="over the limit"):
        check_labels({"k": "v" * MAX_LABEL_SIZE})
    with pytest.raises(InvalidLabelError, match="empty key"):
        check_labels({"": "v"})
