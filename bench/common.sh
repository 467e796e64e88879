# Helpers the bench scripts share (sourced after they cd to the repository root).

# The median of the numbers on stdin, one per line (the mean of the middle two for an even count).
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# The number under "KEY" in a JSON file written by pdecay or bench/torch_ref.py: key KEY FILE
# (any spaces after the colon; exponents such as 1e+5 whole).
key() { grep -o "\"$1\": *[0-9.e+-]*" "$2" | head -1 | sed 's/.*: *//'; }
