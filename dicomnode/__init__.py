"""The DICOM node: a third process type (`python -m dicomnode`) that receives radiographs the way a PACS or a modality
sends them (C-STORE) and turns each instance into a job, grouped by study into one batch. It imports service/ and
pneuradnet/; nothing imports it."""
