// The service API comes with the server: `import StateroomServer` is all an embedding package needs.
@_exported import Stateroom
