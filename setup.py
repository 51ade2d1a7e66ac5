from setuptools import find_packages, setup

setup(
    name="e2v",
    version="0.1.0",
    description="Lightning-based training framework for elements-to-video (E2V) diffusion (SkyReels-A2)",
    python_requires=">=3.11",
    packages=find_packages(include=["e2v", "e2v.*"]),
    # recipes are files of the repository (recipes/), read by path from a checkout: `e2v fit --config recipes/...`
    package_data={"e2v": ["assets/**/*"]},
    include_package_data=True,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "lightning==2.6.6",
        "jsonargparse[signatures]==4.53.0",
        "transformers==5.24.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "mlflow==3.17.2",
        "av==18.1.0",
        "opencv-python-headless==4.14.0.94",
        "scikit-image==0.26.0",
        "bitsandbytes==0.50.2",
        "peft==0.21.2",  # LoRA (e2v/lora.py)
        "numpy==2.4.6",
        "pillow==12.3.0",  # gradio 6.31 (the app extra) requires pillow<13
        "tqdm==4.70.1",
        "scenedetect==0.6.7",  # e2v data build's shot detection (0.7 requires the GUI opencv-python)
        # e2v data build's default face detector (a binary wheel, its HOG face model built in); the 128-d face descriptor
        # models (face_recognition_models, ~100 MB) stay in the face extra
        "dlib-bin==20.0.1.post1",
    ],
    extras_require={
        # the face extra too, so the dlib ID-consistency test runs on real (LFW) faces instead of skipping
        "test": ["pytest==9.0.3", "diffusers==0.42.1", "accelerate==1.15.0", "hypothesis==6.170.17",
                 "dlib-bin==20.0.1.post1", "face_recognition_models==0.3.0", "ray[data]==2.60.0",
                 "gradio==6.31.0", "playwright==1.65.3"],
        "face": ["dlib-bin==20.0.1.post1", "face_recognition_models==0.3.0"],
        "ray": ["ray[data]==2.60.0"],  # e2v data build --engine ray
        "app": ["gradio==6.31.0"],  # e2v app (the browser UI)
    },
    entry_points={
        "console_scripts": ["e2v=e2v.cli:main"],
        # e2v's own bench scorers register through the plug-in group (imported on the registry's first lookup)
        "e2v.plugins": ["bench_scorers = e2v.bench.scorers"],
    },
)
