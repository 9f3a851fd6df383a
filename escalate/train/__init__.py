"""What the training methods share (DESIGN.md, "train/"): config.py (the loop's settings every method's
config extends) and loop.py (the TRL SFT loop and turning a finished trainer into a summary).

Each method lives in its own package (escalate/sater/, escalate/corea/, escalate/citer/); TRL is imported
inside the train functions, so loading a profile stays cheap.
"""
