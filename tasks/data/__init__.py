"""A stage's data: TaskExample records, dataset-format readers (formats/), the template registry,
boxes as text, the seeded mixture, token encoding and exact packing, the stage's batches and the
`spec preview` of a mixture."""
