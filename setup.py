"""Builds the Rust parts of the Python package (metadata: pyproject.toml) with setuptools-rust:
the preload library (the root crate, a cdylib) as ``s3dlio_direct/libs3dlio_direct.so`` and
the command (crates/cli) as ``s3dlio_direct/s3dlio-direct``, side by side, which is where
the command looks for the library. Neither is a Python extension module, so the wheel is
tagged ``py3-none-<platform>``: one wheel serves every Python 3.

``make wheel`` runs this with ``CARGO=cargo-zigbuild`` and a glibc-versioned target
(``x86_64-unknown-linux-gnu.2.17``) so that both files run on old distributions, then
``auditwheel repair`` gives the wheel its manylinux tag.
"""

import os

from setuptools import setup
from setuptools_rust import Binding, RustExtension, build_rust

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel


class BuildRust(build_rust):
    """The library keeps the name LD_PRELOAD is given, not an extension module's
    ``.cpython-311-x86_64-linux-gnu.so`` name: Python never imports it. Cargo says which
    crate it compiles, not every rustc command line (setuptools' default verbosity would
    make it ``cargo -v``)."""

    def run_for_extension(self, ext):
        self.verbose = 0
        super().run_for_extension(ext)

    def get_dylib_ext_path(self, ext, target_fname):
        path = super().get_dylib_ext_path(ext, target_fname)
        return os.path.join(os.path.dirname(path), "libs3dlio_direct.so")


class BdistWheel(bdist_wheel):
    """``py3-none-<platform>``: no Python ABI is involved, only the platform's."""

    def get_tag(self):
        _python, _abi, plat = super().get_tag()
        return "py3", "none", plat


setup(
    rust_extensions=[
        RustExtension(
            "s3dlio_direct.libs3dlio_direct",
            path="Cargo.toml",
            binding=Binding.NoBinding,
            cargo_manifest_args=["--locked"],
        ),
        RustExtension(
            {"s3dlio-direct": "s3dlio_direct.s3dlio-direct"},
            path="crates/cli/Cargo.toml",
            binding=Binding.Exec,
            cargo_manifest_args=["--locked"],
        ),
    ],
    cmdclass={"build_rust": BuildRust, "bdist_wheel": BdistWheel},
    zip_safe=False,
)
