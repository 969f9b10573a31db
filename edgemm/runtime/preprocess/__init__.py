"""Runtime preprocessing: raw text, images and audio into the model's feed, torch-free.

:mod:`~edgemm.runtime.preprocess.pipeline` drives the whole step from the manifest;
:mod:`~edgemm.runtime.preprocess.text`, :mod:`~edgemm.runtime.preprocess.image` and
:mod:`~edgemm.runtime.preprocess.audio` hold each modality; :mod:`~edgemm.runtime.preprocess.files`
reads user files under a byte cap.
"""
