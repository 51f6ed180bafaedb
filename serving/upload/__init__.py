"""HTTP file-upload prediction service: POST a file of lines, get every line's click probability (or the top-k
ranking) as JSON, or have the ranking stored in Redis; `GET /` is a small page for people. A Flask app served by
waitress on the shared model runtime (`ctrkit.runtime`: versions, hot swap, backends, metrics); lines are parsed
and predicted by the toolkit's one lines -> predictions path (`ctrkit.batch_predict`). See docs/upload.md."""
