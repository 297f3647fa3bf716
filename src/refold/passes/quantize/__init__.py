"""The quantize pass family: calibration statistics (calibration.py) and QDQ insertion."""
