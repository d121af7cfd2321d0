mod tpm;
