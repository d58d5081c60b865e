"""What runs inside our images: the one-shot jobs of compose (`render-config`, `migrate`,
`create-bucket`, `monitoring-setup`), `cleanup`'s purge step, and the `backup` package, whose
service is the one daemon here (`python3 -m jobs.backup serve`, in the backup image). With the
store plugin in scripts/store/, the only Python of this repository shipped in an image."""
