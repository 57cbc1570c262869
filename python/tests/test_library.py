"""Loading: FUSEDOPT_LIBRARY, the error listing every path tried, the
version check, and the ctypes mirrors against the library."""

import ctypes
import os
import re
import tempfile
import unittest

import fusedopt
from fusedopt import _ctypes as C
from fusedopt import _library, _version

HERE = os.path.dirname(os.path.abspath(__file__))


class LibraryFound(unittest.TestCase):
    def test_found_through_env(self):
        env = os.environ.get("FUSEDOPT_LIBRARY")
        if not env:
            self.skipTest("FUSEDOPT_LIBRARY is not set (CTest sets it)")
        self.assertEqual(os.path.realpath(fusedopt.library_path()), os.path.realpath(env))
        self.assertEqual(fusedopt.library_version(), "0.4.0")

    def test_env_bare_name_is_the_working_directory_file(self):
        """FUSEDOPT_LIBRARY=libfusedopt.so names the file in the working
        directory, as the existence check sees it, not the loader's search
        (which could load another library)."""
        env = os.environ.get("FUSEDOPT_LIBRARY")
        if not env:
            self.skipTest("FUSEDOPT_LIBRARY is not set")
        cwd = os.getcwd()
        try:
            os.chdir(os.path.dirname(os.path.abspath(env)))
            lib = _library.find_and_load({"FUSEDOPT_LIBRARY": os.path.basename(env)})
            self.assertEqual(lib.fo_version_string(), b"0.4.0")
            with tempfile.TemporaryDirectory() as d:
                os.chdir(d)
                with open("libfusedopt.so", "wb") as f:
                    f.write(b"not a library")
                with self.assertRaises(_library.LibraryNotFoundError) as cm:
                    _library.find_and_load({"FUSEDOPT_LIBRARY": "libfusedopt.so"})
                self.assertIn(os.path.join(os.path.realpath(d), "libfusedopt.so"),
                              str(cm.exception).replace(d, os.path.realpath(d)))
                os.chdir(cwd)
        finally:
            os.chdir(cwd)

    def test_env_directory(self):
        env = os.environ.get("FUSEDOPT_LIBRARY")
        if not env:
            self.skipTest("FUSEDOPT_LIBRARY is not set")
        lib = _library.find_and_load({"FUSEDOPT_LIBRARY": os.path.dirname(env)})
        self.assertEqual(lib.fo_version_string(), b"0.4.0")

    def test_env_pointing_at_nothing_lists_the_path(self):
        missing = os.path.join(tempfile.gettempdir(), "no-such-dir-fo", "libfusedopt.so")
        with self.assertRaises(fusedopt.LibraryNotFoundError) as cm:
            _library.find_and_load({"FUSEDOPT_LIBRARY": missing})
        self.assertIsInstance(cm.exception, ImportError)
        msg = str(cm.exception)
        self.assertIn(missing + ": no such file", msg)
        self.assertIn("FUSEDOPT_LIBRARY", msg)

    def test_env_pointing_at_a_non_library_says_why(self):
        with tempfile.TemporaryDirectory() as d:
            bogus = os.path.join(d, "libfusedopt.so")
            with open(bogus, "w") as f:
                f.write("not an ELF file\n")
            with self.assertRaises(fusedopt.LibraryNotFoundError) as cm:
                _library.find_and_load({"FUSEDOPT_LIBRARY": bogus})
            self.assertIn(bogus + ": ", str(cm.exception))
            self.assertNotIn(bogus + ": no such file", str(cm.exception))

    def test_search_lists_every_path_tried(self):
        with tempfile.TemporaryDirectory() as pkg, tempfile.TemporaryDirectory() as prefix:
            try:
                lib = _library.find_and_load({}, package_dir=pkg, dirs=[prefix])
            except fusedopt.LibraryNotFoundError as e:
                msg = str(e)
                for kind, path in _library.candidates({}, pkg, [prefix]):
                    self.assertIn(path + ":", msg)
                self.assertIn(os.path.join(pkg, "libfusedopt.so.0.4") + ": no such file", msg)
                self.assertIn(os.path.join(prefix, "libfusedopt.so") + ": no such file", msg)
                self.assertIn("libfusedopt.so.0.4:", msg)  # the loader's own search
            else:  # installed where the dynamic loader finds it
                self.assertEqual(lib.fo_version_number() // 100, 4)

    def test_next_to_package_before_prefix(self):
        env = os.environ.get("FUSEDOPT_LIBRARY")
        if not env:
            self.skipTest("FUSEDOPT_LIBRARY is not set")
        with tempfile.TemporaryDirectory() as pkg:
            os.symlink(os.path.realpath(env), os.path.join(pkg, "libfusedopt.so"))
            lib = _library.find_and_load({}, package_dir=pkg, dirs=[])
            self.assertEqual(os.path.realpath(lib._name),
                             os.path.realpath(os.path.join(pkg, "libfusedopt.so")))


class VersionCheck(unittest.TestCase):
    def setUp(self):
        self.saved = _version.__version__

    def tearDown(self):
        _version.__version__ = self.saved

    def test_matching_version_accepted(self):
        _library.check_version(_library.load())

    def test_mismatch_refused_naming_both(self):
        _version.__version__ = "0.2.0"
        with self.assertRaises(fusedopt.VersionMismatchError) as cm:
            _library.check_version(_library.load())
        msg = str(cm.exception)
        self.assertIn("0.4.0", msg)  # the library's
        self.assertIn("0.2.0", msg)  # the package's
        self.assertIsInstance(cm.exception, ImportError)

    def test_mismatch_refused_by_the_search(self):
        env = os.environ.get("FUSEDOPT_LIBRARY")
        if not env:
            self.skipTest("FUSEDOPT_LIBRARY is not set")
        _version.__version__ = "1.4.0"
        with self.assertRaises(fusedopt.VersionMismatchError) as cm:
            _library.find_and_load({"FUSEDOPT_LIBRARY": env})
        self.assertIn("1.4.0", str(cm.exception))
        self.assertIn("0.4.0", str(cm.exception))

    def test_pyproject_version_is_the_package_version(self):
        with open(os.path.join(HERE, "..", "pyproject.toml")) as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        self.assertEqual(m.group(1), fusedopt.__version__)
        lib = _library.load()
        self.assertEqual(lib.fo_version_string().decode().split(".")[:2],
                         fusedopt.__version__.split(".")[:2])


class Mirrors(unittest.TestCase):
    def test_struct_sizes_match_the_library(self):
        lib = _library.load()
        buf = (ctypes.c_ubyte * 4096)()
        for fill, cls in ((lib.fo_options_default, C.FoOptions),
                          (lib.fo_dp_options_default, C.FoDpOptions),
                          (lambda p: lib.fo_hparams_default(0, p), C.FoHparams)):
            ctypes.memset(buf, 0, 4096)
            self.assertEqual(fill(ctypes.cast(buf, ctypes.c_void_p)), 0)
            self.assertEqual(ctypes.c_size_t.from_buffer(buf).value, ctypes.sizeof(cls),
                             cls.__name__)
        # The header's own figure (CHANGELOG 0.3.0: "expected 112").
        self.assertEqual(ctypes.sizeof(C.FoHparams), 112)
        self.assertEqual(ctypes.sizeof(C.FoStepInfo), 40)
        _library.check_layouts(lib)

    def test_too_small_mirror_refused_without_overrun(self):
        class Short(ctypes.Structure):
            _fields_ = [(name, t) for name, t in C.FoHparams._fields_ if name != "reserved"]
        saved = C.FoHparams
        C.FoHparams = Short
        try:
            with self.assertRaises(fusedopt.LayoutMismatchError) as cm:
                _library.check_layouts(_library.load())
        finally:
            C.FoHparams = saved
        self.assertIn("fo_hparams_default", str(cm.exception))
        self.assertIn("112", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
