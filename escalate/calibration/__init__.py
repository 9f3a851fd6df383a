"""`escalate calibrate`: do thresholds fitted on a constructed calibration set transfer to shifted data?

shifts.py builds `arith` datasets the zoo was not tuned on, construct.py samples the models on them
and on a balanced mixture of them, transfer.py fits thresholds on each source and applies them.
"""
