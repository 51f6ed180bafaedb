"""HTTP file-upload prediction service: POST a file of Criteo lines, get every line's click probability
(or the top-k ranking) as JSON, or have the ranking stored in Redis. A Flask app served by waitress;
predictors come from `ctrkit.inference`, line parsing from `ctrkit.data`. See docs/upload.md."""
