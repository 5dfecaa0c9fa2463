# A pipeline of forked and exec'd coreutils, a subshell and a wait.
set -e
seq 1 1000 | grep 7 | sort -rn | head -n 3 | tr '\n' ' '
echo
( sleep 0.1; echo background done ) &
wait
echo "$(ls /scripts | wc -l) script(s)"
