from setuptools import find_packages, setup

setup(
    name="bev_mtl",
    version="0.1.0",
    description="Camera-only multi-view BEV multi-task perception (detection + attributes + map)",
    packages=find_packages(include=["bev_mtl", "bev_mtl.*"]),
    python_requires=">=3.10",
    # Pinned versions live in requirements.txt; `make venv` installs them.
    install_requires=["torch", "torchvision", "nuscenes-devkit", "numpy<2", "pyquaternion", "tqdm", "Pillow", "PyYAML"],
)
