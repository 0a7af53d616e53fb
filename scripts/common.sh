# Shared by the scripts here (source it). A stage that was interrupted left its run directory behind: continue it
# from its last checkpoint, or (killed before the first one) start it again with the old directory moved aside.
# The trainers refuse to write over a run directory otherwise.
again() { if [ -f "$1/checkpoints/latest" ]; then echo "--resume_from latest"; elif [ -e "$1" ]; then echo "--overwrite"; fi; }
