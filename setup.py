"""Build the Cython extensions.

Every ``*.pyx`` under ``mq9fast/`` becomes an extension module of the same dotted name, so a new
compiled module needs no change here.  C helpers live in ``csrc/`` and are on the include path.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extensions():
    exts = []
    for path in sorted(glob.glob("mq9fast/**/*.pyx", recursive=True)):
        name = path[:-4].replace(os.sep, ".")
        exts.append(
            Extension(
                name,
                [path],
                include_dirs=[os.path.join(HERE, "csrc")],
                extra_compile_args=["-O3", "-fno-strict-aliasing"],
            )
        )
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions())
