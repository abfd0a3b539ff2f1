"""The MDRNet model (coarse partial-conv U-Net, parser, style encoder, DMM, MREM, guided refinement,
PatchGAN) lands here with the model issue."""
