"""``python -m s3dlio_direct ...``: the same as the ``s3dlio-direct`` command, e.g.
``python -m s3dlio_direct run --paths /data -- python train.py``."""

from s3dlio_direct import main

if __name__ == "__main__":
    main()
