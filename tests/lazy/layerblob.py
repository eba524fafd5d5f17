"""A layer blob in memory with its descriptor, read by range (TOC reader tests)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Self

from fusesnap.oci import Descriptor


@dataclasses.dataclass
class LayerBlob:
    data: bytes
    layer: Descriptor
    requests: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    async def fetch(self, offset: int, length: int) -> bytes:
        self.requests.append((offset, length))
        assert offset >= 0
        assert offset + length <= len(self.data)
        return self.data[offset : offset + length]

    def with_(
        self, data: bytes | None = None, ann: Mapping[str, str | None] = MappingProxyType({})
    ) -> Self:
        """This blob with other bytes, and annotations changed (None: removed)."""
        merged = {**self.layer.annotations, **ann}
        data = self.data if data is None else data
        layer = dataclasses.replace(
            self.layer,
            size=len(data),
            annotations={k: v for k, v in merged.items() if v is not None},
        )
        return type(self)(data, layer)
