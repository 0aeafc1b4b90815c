"""Packaging for selfy-tf: SELFY (ICCV 2021) for TensorFlow / Keras 3."""

import re
from pathlib import Path

from setuptools import find_packages, setup

_ROOT = Path(__file__).parent
_VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (_ROOT / "selfy_tf" / "version.py").read_text(),
    re.M,
).group(1)

# Lower bounds are the versions verified together (DESIGN.md §7).
_INSTALL_REQUIRES = [
    "tensorflow>=2.21.0",
    "keras>=3.15.1",
    "numpy>=2.0",
    "tensorboard>=2.21.0",
    "tensorflow-serving-api>=2.21.0",
    "grpcio>=1.60",
    # The REST front end of `selfy serve` (docs/serving.md).
    "aiohttp>=3.14.5",
    "ai-edge-litert>=2.3.0",
    "av>=14.0",
    "Pillow>=10.0",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "PyYAML>=6.0",
]

# torch==2.13.0 is available as a local CPU wheel; any other spec pulls
# several GB of CUDA builds.
_TORCH = ["torch==2.13.0"]

setup(
    name="selfy-tf",
    version=_VERSION,
    description=(
        "SELFY: spatio-temporal self-similarity for video action recognition, "
        "in TensorFlow / Keras 3"
    ),
    long_description=(_ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["selfy_tf*", "tfrecords*", "trainer*", "serving*", "selfy_cli*"]),
    include_package_data=True,
    # The weights of the `.motion` pretrained configs.
    package_data={"selfy_tf.models": ["pretrained/*.weights.h5", "pretrained/*.json"]},
    install_requires=_INSTALL_REQUIRES,
    extras_require={
        "torch": _TORCH,
        "test": ["pytest>=8.0", "jax[cpu]>=0.10.2", "pytest-xdist>=3.8", "ruff>=0.17.6", "import-linter>=2.17", *_TORCH],
    },
    entry_points={"console_scripts": ["selfy=selfy_cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
