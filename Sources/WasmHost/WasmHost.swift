import Stateroom
