"""Test-image builders: OCI layouts, skopeo pushes, umoci ground truth.

Modules, lowest first:

- `layout`   write OCI image layouts (`Layer`, `Image`, `Platform`, `write_layout`)
- `tarutil`  layer tarballs (`TarBuilder` for crafted entries, `tar_tree` for a rootfs)
- `busybox`, `debian`, `crafted`   image builders returning `Image`
- `push`     ``skopeo copy`` to a registry (`push_layout`, `push_tar_layers`)
- `umoci`    ``umoci unpack`` as the judge of an image's root filesystem
- `catalog`  named images built and pushed in one call (`build_and_push`)
- `cache`    where expensive images are kept between runs
"""

from tools.images.catalog import NAMES, LayerInfo, PushedImage, build_and_push, build_layout
from tools.images.layout import Compression, Image, Layer, Platform, write_layout
from tools.images.push import push_layout, push_tar_layers
from tools.images.umoci import umoci_unpack

__all__ = [
    "NAMES",
    "Compression",
    "Image",
    "Layer",
    "LayerInfo",
    "Platform",
    "PushedImage",
    "build_and_push",
    "build_layout",
    "push_layout",
    "push_tar_layers",
    "umoci_unpack",
    "write_layout",
]
