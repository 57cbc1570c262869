"""The wheel's tag: pure Python (py3-none-any) unless a libfusedopt.so* has
been dropped into the package (docs/python.md, "Install"), in which case the
wheel holds machine code and is tagged for this platform (py3-none-PLATFORM:
the package reaches the library through ctypes, so it depends on no Python
ABI).  Everything else is in pyproject.toml."""
import glob
import os

from setuptools import setup

try:  # setuptools >= 70.1 carries bdist_wheel itself
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


def bundles_library():
    return bool(glob.glob(os.path.join(HERE, "fusedopt", "libfusedopt.so*")))


class PlatformWheelWhenBundled(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        if bundles_library():
            self.root_is_pure = False

    def get_tag(self):
        python, abi, plat = super().get_tag()
        if bundles_library():
            return "py3", "none", plat
        return python, abi, plat


setup(cmdclass={"bdist_wheel": PlatformWheelWhenBundled})
