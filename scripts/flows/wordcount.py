from nodes import Flow, sources, sinks
flow = Flow("wordcount")
(flow.source(sources.files("corpus/*.txt"))      # relative to the flow file's directory
     .flat_map(str.split)
     .key_by(lambda w: w)
     .count()
     .sink(sinks.table()))
