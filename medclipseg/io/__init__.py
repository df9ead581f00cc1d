"""Reading and checking user input: images (8/16-bit, grey, colour), DICOM, masks and prompts."""
