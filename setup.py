"""Builds the wheel with the grammars (grammar/*.lark) and the CUDA sources (cuda/*.cu,
cuda/*.cuh) inside the package, as bwplan/_data/<folder>/, where bwplan.resources finds
them in an installed wheel. They stay at the top of the checkout, where a source checkout
or an editable install reads them; every file matching the globs is packaged, so a new
kernel file needs no edit here."""
import glob
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PACKAGED = {"grammar": ("*.lark",), "cuda": ("*.cu", "*.cuh")}


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's folders directly
        for folder, patterns in PACKAGED.items():
            target = os.path.join(self.build_lib, "bwplan", "_data", folder)
            self.mkpath(target)
            for pattern in patterns:
                for path in sorted(glob.glob(os.path.join(folder, pattern))):
                    self.copy_file(path, target)


setup(cmdclass={"build_py": BuildPyWithData})
