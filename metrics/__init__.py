# Evaluation of EDM models: FID statistics (metrics/fid.py). Below sfbd/, above training/.
