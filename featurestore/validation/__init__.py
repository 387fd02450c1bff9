"""The one home of validation (SPEC §3, §5): every request is decoded once into its type
(`decoding`), then checked once for what a type cannot say (`requests`, `events`,
`identifiers`); every failure is an error of the catalogue (`featurestore.errors`), with
`errors: [{index, field, reason}]` where a list of events is involved."""
